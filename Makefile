# k8stopo — see README.md. Everything runs as root (network namespaces).
VENV      := .venv
PY        := $(VENV)/bin/python
K8STOPO   := $(VENV)/bin/k8stopo
STAMP     := $(VENV)/.k8stopo-installed

# `make bench` runs experiments/default.yaml, `make bench-NAME` experiments/NAME.yaml
# (bench-full: the exhaustive matrix). Each of these, when given, overrides the file:
#   make bench CNI=host,flannel-vxlan REPEAT=1
OVERRIDES := $(if $(CNI),--cni $(CNI)) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
  $(if $(PROTOCOLS),--protocols $(PROTOCOLS)) $(if $(NODES),--nodes $(NODES)) \
  $(if $(PODS),--pods-per-node $(PODS)) $(if $(DURATION),--duration $(DURATION)) \
  $(if $(REPEAT),--repeat $(REPEAT)) $(if $(OUT),--out $(OUT)) $(if $(PLOTS),--plots $(PLOTS))

.PHONY: install test test-quick lint bench plots notebooks clean

install:
	@scripts/install.sh

$(STAMP): setup.py scripts/install.sh $(wildcard k8stopo/native/*.[ch])
	@scripts/install.sh

test: $(STAMP) lint
	$(PY) -m pytest -v -p no:cacheprovider tests

# The tests that build no namespace (parsers, statistics, manifests, specs, charts from
# CSVs), as any user, no root; the notebooks' run (slow) left out (tests/conftest.py).
test-quick: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not requires_root and not slow" tests

# Lint and type check of the whole tree (config: ruff.toml, setup.cfg [mypy]).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: bench-default

bench-%: experiments/%.yaml $(STAMP)
	$(K8STOPO) bench --experiment $< $(OVERRIDES)

# The control-plane kinds: make bench-control-plane/dns runs experiments/control-plane/dns.yaml
# (a pattern with a slash: bench-% alone would not match a target with a directory).
bench-control-plane/%: experiments/control-plane/%.yaml $(STAMP)
	$(K8STOPO) bench --experiment $< $(OVERRIDES)

# Charts of the newest default run (k8stopo plot takes several files too).
plots: $(STAMP)
	$(K8STOPO) plot $(lastword $(sort $(wildcard results/default/default-*.csv))) \
	  --out $(or $(PLOTS),results/default/plots)

# Execute every notebook headless over results/**/*.csv; executed copies, charts
# included, go to results/notebooks/ (the notebooks in git stay without outputs).
notebooks: $(STAMP)
	$(K8STOPO) notebooks --results results --out results/notebooks

# Remove what crashed runs left behind (by their recorded prefix and pids only).
clean: $(STAMP)
	$(K8STOPO) clean
