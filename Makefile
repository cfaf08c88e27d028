# k8stopo — see README.md. Everything runs as root (network namespaces).
VENV      := .venv
PY        := $(VENV)/bin/python
K8STOPO   := $(VENV)/bin/k8stopo
STAMP     := $(VENV)/.k8stopo-installed

# The default comparison of `make bench` (override on the command line).
CNI       ?= host,flannel-vxlan,flannel-host-gw,calico-bgp
SCENARIOS ?= host-to-host,pod-to-pod-same-node,pod-to-pod-cross-node,node-to-pod
PROTOCOLS ?= tcp,udp,icmp
NODES     ?= 2
PODS      ?= 2
DURATION  ?= 5
REPEAT    ?= 3
RUN       := $(shell date -u +%Y%m%dT%H%M%SZ)
OUT       ?= results/runs/bench-$(RUN).csv
PLOTS     ?= results/plots
# Published CNI figures to put our ratios beside, when the shared copy is there.
PUBLISHED := $(wildcard ../shared/published/cni-benchmarks.csv)
COMPARE   := $(if $(PUBLISHED),--published $(PUBLISHED))

.PHONY: install test bench plots notebooks clean

install:
	@scripts/install.sh

$(STAMP): setup.py scripts/install.sh $(wildcard k8stopo/native/*.[ch])
	@scripts/install.sh

test: $(STAMP)
	$(PY) -m pytest -v -p no:cacheprovider tests

bench: $(STAMP)
	$(K8STOPO) bench --cni $(CNI) --scenarios $(SCENARIOS) --protocols $(PROTOCOLS) \
	  --nodes $(NODES) --pods-per-node $(PODS) --duration $(DURATION) --repeat $(REPEAT) \
	  --out $(OUT) --plots $(PLOTS) $(COMPARE)

# Charts of the newest run CSV in results/runs (k8stopo plot takes several files too).
plots: $(STAMP)
	$(K8STOPO) plot $(lastword $(sort $(wildcard results/runs/*.csv))) --out $(PLOTS) $(COMPARE)

notebooks:
	@echo "notebooks come with a later issue (see README)"; exit 1

# Remove what crashed runs left behind (by their recorded prefix and pids only).
clean: $(STAMP)
	$(K8STOPO) clean
