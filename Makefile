# Set-up and entry points. `make demo` and `make test` do all set-up on a fresh machine.
PY_SYS ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv eval_cylib test demo demo-qaconv bench tables clean distclean

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

# The main job on the synthetic default: generate the data (first use), train a small BoT model from scratch
# on the CPU, evaluate, and print rank-1/5/10, mAP, mINP beside the untrained model and a colour histogram.
DEMO_ARGS ?= --dataset synthetic -a resnet18 --no-pretrained --height 128 --width 64 --epochs 20 \
	--warmup-epochs 2 --milestones 14 18 --eval-period 0 --workers 2 --exp-dir exp/demo --run-name demo \
	--no-auto-resume --compare-histogram --visualize-queries 6

demo: eval_cylib
	rm -rf exp/demo/crossmodal_bot/synthetic/demo
	$(PYTHON) crossmodal_bot/main.py $(DEMO_ARGS)

# QAConv-GS on the synthetic data (random init, so the 2.0 pairwise matching loss: see qaconv/README.md), with
# the untrained model, the colour histogram, and re-ranking + TLift on the synthetic frame stamps.
QAConv_DEMO_ARGS ?= --dataset synthetic -a resnet18 --ibn none --no-pretrained --no-freeze-bn --height 128 --width 64 \
	-b 16 --num_instance 2 --loss pairwise --epochs 8 --workers 2 --exp-dir exp/demo --run-name demo \
	--no-auto-resume --compare-histogram --do_tlift --visualize-pairs 4

demo-qaconv: eval_cylib
	rm -rf exp/demo/qaconv/synthetic/demo
	$(PYTHON) qaconv/main_gs.py $(QAConv_DEMO_ARGS)

bench: eval_cylib
	$(PYTHON) benchmarks/bench_eval.py --sizes market
	$(PYTHON) benchmarks/bench_eval.py --sizes msmt --repeat 1 --no-argsort
	$(PYTHON) benchmarks/bench_bot_train.py
	$(PYTHON) benchmarks/bench_qaconv_matcher.py
	$(PYTHON) benchmarks/bench_rerank.py
	$(PYTHON) benchmarks/bench_rerank.py --input distances
	$(PYTHON) benchmarks/bench_cluster.py --size market --prune
	$(PYTHON) benchmarks/bench_san.py
	$(PYTHON) benchmarks/bench_mudeep.py

# Every method's paper table (<method>/paper_results.json) with our runs' figures beside it; TABLES_ARGS=--markdown
# prints Markdown for the READMEs.
TABLES_ARGS ?= --exp-dir exp

tables: $(STAMP)
	$(PYTHON) -m common.results $(TABLES_ARGS)

clean:
	rm -rf eval_cylib/build eval_cylib/*.c eval_cylib/*.so eval_cylib/*.html
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
