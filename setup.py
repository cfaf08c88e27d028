from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="k8stopo",
    version="0.1.0",
    description="Kubernetes CNI datapaths emulated on one Linux box with Mininet, measured honestly",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["k8stopo", "k8stopo.*"]),
    package_data={"k8stopo": ["templates/*", "servers/*.c"]},
    python_requires=">=3.10",
    # mininet comes from Debian's python3-mininet (with mnexec); see Makefile.
    install_requires=["pandas>=1.5", "matplotlib>=3.6", "scipy>=1.10"],
    # test: pytest, the lint and the type check of `make test` (make lint)
    extras_require={"test": ["types-PyYAML", "types-tqdm", "pytest>=7.2", "ruff>=0.6", "mypy>=1.10"]},
    entry_points={"console_scripts": ["k8stopo=k8stopo.cli:main"]},
)
