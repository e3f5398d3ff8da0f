#!/bin/bash
# A tiny run of every shipped spec (an experiment's first run), for diff_runs.py:
#   tests/benchmarks/tiny_runs.sh SRC OUT
# SRC is the tree whose runner is used (this checkout, or a `git worktree` of another commit);
# OUT receives one run folder per spec. Base scores are computed, not reused, and the thread
# count is fixed, so two trees' outputs differ only where their code does.
set -u
src=$(cd "$1" && pwd); out=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
export RUNNER_NO_CACHE=1 OMP_NUM_THREADS=2 PYTHONPATH=$src
rm -rf "$out"; mkdir -p "$out"; out=$(cd "$out" && pwd)
for spec in "$here"/experiments/*.yaml; do
  name=$(basename "$spec" .yaml)
  # the first run's name, from whichever layout the tree has (run from $out, so that the tree
  # on PYTHONPATH is the one imported, not a runner/ in the working folder)
  only=$(cd "$out" && $py -c "
try:
    from runner.spec.load import load_spec
except ImportError:
    from runner.spec import load_spec
s = load_spec('$spec'); print(s.runs[0].run.name if s.runs else '')" 2>/dev/null)
  args=(--set model.source=random-tiny --set training.max_steps=1
        --set 'evaluation.baselines=[majority, fine_tuned]' --set evaluation.bootstrap_samples=10
        --output-dir "$out")
  [ -n "$only" ] && args+=(--only "$only")
  (cd "$out" && $py -m runner run "$spec" "${args[@]}" > "$out/$name.log" 2>&1; echo "$name: exit $?")
done
