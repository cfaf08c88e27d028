"""k8stopo: Kubernetes networking emulated on one Linux box with Mininet, measured honestly."""
__version__ = "0.1.0"
