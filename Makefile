# Set-up and entry points. `make demo` and `make test` do all set-up on a fresh machine.
PY_SYS ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv eval_cylib test demo bench clean distclean

all: test

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PYTHON) || $(PY_SYS) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $(STAMP)

# Builds eval_cylib/rank_cy*.so in place (.PHONY: the target shares its name with the folder).
eval_cylib: $(STAMP)
	cd eval_cylib && ../$(PYTHON) setup.py -q build_ext --inplace && rm -rf build

test: eval_cylib
	$(PYTHON) -m pytest -q tests

demo: eval_cylib
	$(PYTHON) -m crossmodal_bot.demo

bench: eval_cylib
	$(PYTHON) benchmarks/bench_eval.py --max-queries 2000

clean:
	rm -rf eval_cylib/build eval_cylib/*.c eval_cylib/*.so eval_cylib/*.html
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
