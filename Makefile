# Every target creates the virtual environment first when it is missing (or stale).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.otofx-installed

.PHONY: demo inspect test test-slow fuzz bench ruff lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,demo]' ruff
	touch $(STAMP)

demo: $(STAMP)  ## the main job: compress a CNN on load_digits with DHSPG, print the report
	$(PY) examples/compress_digits.py

inspect: $(STAMP)  ## analyse a ResNet-50, zero half of every prunable group, shrink, compare
	$(PY) -m otofx roundtrip torchvision.models:resnet50 --input-shape 1,3,224,224 --max-rows 12

test: $(STAMP)  ## the CI test suite (models under 100M parameters)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## the few zoo models over 100M parameters
	$(PY) -m pytest -q -m slow

fuzz: $(STAMP)  ## thousands of random architectures from every grammar (hypothesis "fuzz" profile)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --hypothesis-show-statistics \
		$(wildcard tests/test_properties_*.py)

bench: $(STAMP)  ## every benchmark, side by side with the peers; regenerates benchmarks/RESULTS.md
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[bench]'
	$(PY) -m benchmarks $(if $(QUICK),--quick)

ruff: $(STAMP)  ## ruff alone (what CI runs before the tests)
	$(VENV)/bin/ruff check otofx passes tests benchmarks examples

lint: ruff  ## ruff, and every RESULTS.md section current with the code it measures
	$(PY) -m benchmarks --check

clean:
	rm -rf $(VENV) build *.egg-info
