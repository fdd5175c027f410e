# Two commands do all the set-up on a fresh machine:
#   make demo   # installs, then runs the main job on the embedded default
#   make test   # installs, then runs the test suite
.PHONY: setup demo demo2d test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/toolkit train recipe=text2img_cfm run_dir=runs/text2img_cfm resume=latest

demo2d: setup
	.venv/bin/toolkit demo2d

test: setup
	@.venv/bin/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

lint: setup
	.venv/bin/ruff check toolkit tests bench

bench: setup
	.venv/bin/python -m bench.solvers_gmm
