#!/usr/bin/env bash
# The exact commands behind RESULTS.md, one job a function (CleanRL-style: a figure is tied to the
# command that made it). Every job trains into runs/NAME, evaluates, and copies the small result
# files (config, eval*.json, lake.json, metrics.csv, regression figures) into results/NAME, from
# which `fastadapt results` regenerates the table.
#
#   bash scripts/reproduce.sh list                         # the job names, in queue order
#   bash scripts/reproduce.sh run maml-5w1s                # one job
#   bash scripts/reproduce.sh list | xargs -P 2 -n 1 bash scripts/reproduce.sh run   # all, 2 at a time
#   bash scripts/reproduce.sh keep NAME                    # copy a finished run's results again
#   bash scripts/reproduce.sh table                        # RESULTS.md + plots from results/
#
# Shortened schedules: the presets keep the papers' full lengths; the `train.steps=` overrides
# below are what fits a 3-hour session on 2 CPU cores, and are recorded in each result.
# Each job runs single-threaded with one engine worker (OMP_NUM_THREADS=1, train.workers=1) so
# that two jobs share the 2 cores without oversubscription.
set -euo pipefail
cd "$(dirname "$0")/.."
FA=${FA:-.venv/bin/fastadapt}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

train() {  # train NAME PRESET [--set ...]: train into runs/NAME (resumes if interrupted)
  local name=$1 preset=$2; shift 2
  "$FA" train "$preset" --out "runs/$name" --quiet --set train.workers=1 "$@"
}
keep() {  # keep NAME: copy the run's small result files into results/NAME
  local src=runs/$1 dst=results/$1
  mkdir -p "$dst"
  cp "$src"/config.yaml "$src"/eval*.json "$dst"/
  for f in lake.json metrics.csv np_regression.json np_regression.png; do
    [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
  done
  return 0
}
# The -lake runs: trained on the background alphabets; their own test (200 episodes on the
# evaluation alphabets) is a sanity check, the Lake 20-run score is their result.
lake_split=(--set data.train_split=background --set data.val_split=null --set data.test_split=evaluation
            --set eval.episodes=200)

# -- issue 3: optimisation-based family ------------------------------------------------------
# Sinusoid jobs: train, test after 1 step (the run's own eval.json), then after 5 and 10 steps.
sinusoid() {  # sinusoid NAME PRESET [--set ...]
  train "$@"
  for k in 5 10; do "$FA" eval "runs/$1" --adapt-steps $k; done
  keep "$1"
}
job_maml-sinusoid-5shot()  { sinusoid maml-sinusoid-5shot maml-sinusoid-5shot --set train.engine=vmap; }
job_maml-sinusoid-10shot() { sinusoid maml-sinusoid-10shot maml-sinusoid-10shot --set train.engine=vmap; }
# Variants beyond the paper's MAML: a learned (scalar) inner lr, and 20 query points per task.
job_maml-sinusoid-5shot-learned-lr() {
  sinusoid maml-sinusoid-5shot-learned-lr maml-sinusoid-5shot --set train.engine=vmap --set learner.args.learn_inner_lr=true
}
job_maml-sinusoid-5shot-learned-lr-q20() {
  sinusoid maml-sinusoid-5shot-learned-lr-q20 maml-sinusoid-5shot --set train.engine=vmap \
      --set learner.args.learn_inner_lr=true --set train.episodes.queries=20
}
# MAML with two MAML++ options: a learned inner lr per layer (LSLR; one step) and the outer lr
# cosine-annealed to 1e-5 over the 70k iterations.
job_maml-sinusoid-5shot-lslr-cosine() {
  sinusoid maml-sinusoid-5shot-lslr-cosine maml-sinusoid-5shot --set train.engine=vmap --set learner.args.lslr=true \
      --set train.lr_schedule=cosine --set train.lr_min=0.00001
}
# The cosine-annealed outer lr alone, and with the learned scalar inner lr.
job_maml-sinusoid-5shot-cosine() {
  sinusoid maml-sinusoid-5shot-cosine maml-sinusoid-5shot --set train.engine=vmap \
      --set train.lr_schedule=cosine --set train.lr_min=0.00001
}
job_maml-sinusoid-5shot-learned-lr-cosine() {
  sinusoid maml-sinusoid-5shot-learned-lr-cosine maml-sinusoid-5shot --set train.engine=vmap \
      --set learner.args.learn_inner_lr=true --set train.lr_schedule=cosine --set train.lr_min=0.00001
}
# Meta-SGD (Li et al. 2017) on the same tasks: a learned inner lr per parameter entry, one step.
job_metasgd-sinusoid-5shot() {
  sinusoid metasgd-sinusoid-5shot maml-sinusoid-5shot --set train.engine=vmap --set learner.name=metasgd
}
job_pretrained-sinusoid-5shot()  { sinusoid pretrained-sinusoid-5shot pretrained-sinusoid-5shot --set train.steps=20000; }
job_pretrained-sinusoid-10shot() { sinusoid pretrained-sinusoid-10shot pretrained-sinusoid-10shot --set train.steps=20000; }
job_sinusoid-figure() {
  "$PY" scripts/sinusoid_figure.py runs/maml-sinusoid-5shot runs/pretrained-sinusoid-5shot \
      --out results/sinusoid-5shot.png
}
short_maml=(--set train.val_every=100 --set train.checkpoint_every=50 --set train.log_every=10)
job_maml-5w1s()    { train maml-5w1s maml-omniglot-5w1s --set train.steps=200 "${short_maml[@]}"; keep maml-5w1s; }
job_fomaml-5w1s()  { train fomaml-5w1s fomaml-omniglot-5w1s --set train.steps=200 "${short_maml[@]}"; keep fomaml-5w1s; }
# The same two, 5x longer: does first-order MAML catch up with second order?
job_maml-5w1s-1000()   { train maml-5w1s-1000 maml-omniglot-5w1s --set train.steps=1000 --set train.val_every=250 \
                           --set train.checkpoint_every=50 --set train.log_every=10; keep maml-5w1s-1000; }
job_fomaml-5w1s-1000() { train fomaml-5w1s-1000 fomaml-omniglot-5w1s --set train.steps=1000 --set train.val_every=250 \
                           --set train.checkpoint_every=50 --set train.log_every=10; keep fomaml-5w1s-1000; }
job_anil-5w1s()    { train anil-5w1s anil-omniglot-5w1s --set train.steps=200 "${short_maml[@]}"; keep anil-5w1s; }
job_metasgd-5w1s() { train metasgd-5w1s metasgd-omniglot-5w1s --set train.steps=200 "${short_maml[@]}"; keep metasgd-5w1s; }
job_reptile-5w1s() {
  train reptile-5w1s reptile-omniglot-5w1s --set train.steps=1000 --set train.val_every=500 --set train.checkpoint_every=250
  keep reptile-5w1s
}
# 20-way: 5 inner steps on 20-way episodes cost ~10x a 5-way task; meta-batch 4 instead of 16 so
# that the short run takes more (noisier) meta-steps.
short_20w=(--set train.meta_batch=4 --set train.val_every=100 --set train.checkpoint_every=50 --set train.log_every=10
           --set train.val_episodes=100)
job_maml-20w1s()    { train maml-20w1s maml-omniglot-20w1s --set train.steps=100 "${short_20w[@]}"; keep maml-20w1s; }
job_fomaml-20w1s()  { train fomaml-20w1s fomaml-omniglot-20w1s --set train.steps=100 "${short_20w[@]}"; keep fomaml-20w1s; }
job_anil-20w1s()    { train anil-20w1s anil-omniglot-20w1s --set train.steps=150 "${short_20w[@]}"; keep anil-20w1s; }
job_metasgd-20w1s() { train metasgd-20w1s metasgd-omniglot-20w1s --set train.steps=100 "${short_20w[@]}"; keep metasgd-20w1s; }
job_reptile-20w1s() {
  train reptile-20w1s reptile-omniglot-20w1s --set train.steps=100 --set train.val_every=50 --set train.checkpoint_every=250
  keep reptile-20w1s
}

# -- issue 4: metric, graph, generative and transfer learners ----------------------------------
# Way-agnostic learners train once and are evaluated 5-way and 20-way on the same fixed episodes;
# learners with N-way label inputs (GNN, CNP) train once per N. The `-lake` runs train on the 30
# background alphabets only and are scored on Lake's 20 runs (evaluation alphabets).
both_ways() { "$FA" eval "runs/$1" --ways 20; keep "$1"; }
job_protonet-5w1s() { train protonet-5w1s protonet-omniglot-5w1s --set train.steps=1200 --set train.lr_step=300; both_ways protonet-5w1s; }
job_matching-20w1s() { train matching-20w1s matching-omniglot-20w1s --set train.steps=1000; "$FA" eval runs/matching-20w1s --ways 5; keep matching-20w1s; }
job_relation-5w1s() { train relation-5w1s relation-omniglot-5w1s --set train.steps=1200; both_ways relation-5w1s; }
job_siamese-5w1s()  { train siamese-5w1s siamese-omniglot-5w1s --set train.steps=2000; both_ways siamese-5w1s; }
job_baseline-5w1s() { train baseline-5w1s baseline-omniglot-5w1s --set train.steps=2500; both_ways baseline-5w1s; }
job_baselinepp-5w1s() { train baselinepp-5w1s baselinepp-omniglot-5w1s --set train.steps=2500; both_ways baselinepp-5w1s; }
job_multitask-5w1s() { train multitask-5w1s multitask-omniglot-5w1s --set train.steps=2500; both_ways multitask-5w1s; }
job_gnn-5w1s()  { train gnn-5w1s gnn-omniglot-5w1s --set train.steps=1200; keep gnn-5w1s; }
# GNN at 20 ways: every query is its own 21-node graph whose edge MLPs run on all its node pairs,
# so 1 query per class in training and in the test episodes (20 graphs each; 500 episodes). It
# sits at chance for ~200 steps before it learns (results/notes.md), so this run trains on the
# Vinyals train classes and validates on the val classes, for the learning curve (curve.png);
# the -lake run's own test is 100 such episodes (its Lake score uses all 400 trials).
job_gnn-20w1s() {
  train gnn-20w1s gnn-omniglot-20w1s --set data.train_split=train --set data.val_split=val \
      --set train.episodes.queries=1 --set eval.queries=1 --set eval.episodes=500 --set train.steps=2500 \
      --set train.val_every=250 --set train.val_episodes=100 --set train.checkpoint_every=250 --set train.log_every=50
  keep gnn-20w1s; cp runs/gnn-20w1s/curve.png results/gnn-20w1s/
}
job_cnp-5w1s()  { train cnp-5w1s cnp-omniglot-5w1s --set train.steps=500 --set train.val_every=250; keep cnp-5w1s; }
job_cnp-20w1s() { train cnp-20w1s cnp-omniglot-20w1s --set train.steps=150 --set train.val_every=75; keep cnp-20w1s; }
job_cnp-gp1d()  { train cnp-gp1d cnp-gp1d --set train.steps=6000 --set train.val_every=3000 --set train.checkpoint_every=2500
                  "$PY" scripts/np_regression.py runs/cnp-gp1d --context 1 2 5 10 20 50; keep cnp-gp1d; }
job_np-gp1d()   { train np-gp1d np-gp1d --set train.steps=6000 --set train.val_every=3000 --set train.checkpoint_every=2500
                  "$PY" scripts/np_regression.py runs/np-gp1d --context 1 2 5 10 20 50; keep np-gp1d; }

lake() { "$FA" lake "runs/$1"; keep "$1"; }
job_protonet-lake() { train protonet-lake protonet-omniglot-quick "${lake_split[@]}" --set train.steps=1000 --set train.lr_step=250; lake protonet-lake; }
job_matching-lake() { train matching-lake matching-omniglot-20w1s "${lake_split[@]}" --set train.steps=800; lake matching-lake; }
job_relation-lake() { train relation-lake relation-omniglot-5w1s "${lake_split[@]}" --set train.steps=800; lake relation-lake; }
job_siamese-lake()  { train siamese-lake siamese-omniglot-lake --set train.steps=2000 --set eval.episodes=200; lake siamese-lake; }
job_baseline-lake() { train baseline-lake baseline-omniglot-20w1s "${lake_split[@]}" --set train.steps=2000; lake baseline-lake; }
job_baselinepp-lake() { train baselinepp-lake baselinepp-omniglot-20w1s "${lake_split[@]}" --set train.steps=2000; lake baselinepp-lake; }
job_multitask-lake() { train multitask-lake multitask-omniglot-5w1s "${lake_split[@]}" --set train.steps=2000; lake multitask-lake; }
job_gnn-lake()  {
  train gnn-lake gnn-omniglot-20w1s "${lake_split[@]}" --set train.episodes.queries=1 --set eval.queries=1 \
      --set eval.episodes=100 --set train.steps=1500 --set train.checkpoint_every=250 --set train.log_every=50
  lake gnn-lake
}
job_cnp-lake()  { train cnp-lake cnp-omniglot-20w1s "${lake_split[@]}" --set train.steps=150; lake cnp-lake; }

# Issue 10's measurements (benchmarks/README.md): `make run`'s ProtoNets, a 100-meta-batch MAML and
# the Baseline row, evaluated on a generated folder of drawn glyphs; predict and decode timings.
job_maml-100() { train maml-100 maml-omniglot-5w1s --set train.steps=100 --set train.val_every=50 --set train.checkpoint_every=25 --set train.log_every=10; }
job_cross-domain() {
  [ -d runs/protonet-omniglot-quick ] || "$FA" train protonet-omniglot-quick --quiet
  [ -d runs/maml-100 ] || job_maml-100
  [ -d runs/baseline-5w1s ] || train baseline-5w1s baseline-omniglot-5w1s --set train.steps=2500
  "$PY" benchmarks/drawn_folder.py runs/drawn-glyphs --per-class 20 --seed 0
  "$PY" benchmarks/cross_domain.py runs/drawn-glyphs runs/protonet-omniglot-quick runs/maml-100 runs/baseline-5w1s
}
job_predict-speed() { OMP_NUM_THREADS=2 "$PY" benchmarks/predict_speed.py --repeats 5; }

# -- issue 11: few-shot text, full-way K-shot (results/text/, table + plot by text_table.py) ------
# Frozen-embedding baselines and encoder fine-tuning at K = 1, 2, 5, 10, 20 over seeds 0-4 on both
# datasets (with out-of-scope detection on CLINC150), then SetFit 1.2 (num_iterations=20, ~17 min
# per support set on a quiet 2-core machine), seed 0 only.
# Needs $FASTADAPT_DATA with text/banking77 and text/clinc150.
text_fewshot() { OMP_NUM_THREADS=2 "$PY" benchmarks/text_fewshot.py --threads 2 --data-root "${FASTADAPT_DATA:-data}" "$@"; }
job_text-fullway() {
  text_fewshot --methods frozen-ncm frozen-logreg encoder-finetune
  text_fewshot --datasets banking77 --methods contrastive-finetune --shots 10
  text_fewshot --datasets banking77 --methods setfit --shots 10 5 --seeds 0 --note "SetFit: seed 0 only (~17 min per support set)"
  # SetFit against K on both datasets (one thread, ~4-45 min per support set)
  local one="setfit: seed 0 only (one run, 1 thread, shared 2-core machine)"
  text_fewshot --threads 1 --datasets banking77 --methods setfit --shots 1 2 --seeds 0 --note "$one"
  text_fewshot --threads 1 --datasets clinc150 --methods setfit --shots 1 2 5 10 --seeds 0 --note "$one"
  # the intent names as 3 extra support sentences each (3 chosen on held-out train sentences)
  text_fewshot --methods frozen-logreg --label-names 3
  text_fewshot --methods encoder-finetune --label-names 3  # recorded: 10-shot (5 seeds), B77 other K (3)
  "$PY" benchmarks/text_table.py results/text
}

# -- issue 12: meta-reinforcement learning ---------------------------------------------------
# MAML-TRPO on 2D navigation: 30-75 s per iteration single-threaded on this shared 2-core machine
# (second-order TRPO over 20 tasks x 20 rollouts x 100 steps); the test reports the returns after
# 0..3 adaptation steps (eval.json other_metrics). The recorded result: this job stopped (time
# budget) at its step-50 checkpoint, scored by `$PY scripts/eval_last_checkpoint.py
# runs/maml-trpo-point2d`; running the job again resumes it towards 100 of the paper's 500.
job_maml-trpo-point2d() {  # recorded before the preset validated: no validation, as then
  train maml-trpo-point2d maml-trpo-point2d --set train.steps=100 --set data.val_split=null; keep maml-trpo-point2d
}
# The preset's full 500 iterations (the paper's length): 6-10 s per iteration on one core beside
# one or two other single-threaded jobs (79 min with validation, then 1 min of test). Every 10
# iterations the return after 3 steps on 40 validation goals picks the tested iterate (70: it
# falls later as the policy's std shrinks from 1.0 to 0.14 and the later test-time steps, which
# grow like 1/std, overshoot). The later steps' size (a factor of the first) is then chosen on
# the same validation goals (seed 1235 = the trainer's eval.seed + 1) and the test run with it.
job_maml-trpo-point2d-full() {
  OMP_NUM_THREADS=1 train maml-trpo-point2d-full maml-trpo-point2d
  for f in 0.5 0.25 0.1; do
    "$FA" eval runs/maml-trpo-point2d-full --split val --episodes 40 --seed 1235 --set learner.args.eval_later_lr_factor=$f
  done
  "$FA" eval runs/maml-trpo-point2d-full --set learner.args.eval_later_lr_factor=0.25  # the best on validation
  paper_test maml-trpo-point2d-full
  keep maml-trpo-point2d-full
}
# The test the MAML paper's figures come from (the preset's reference.test): the authors' 40 goals
# (maml_rl's test_maml_point.py) and their batches of 4,000 steps, 40 rollouts per step.
# Also with the preset's 20 rollouts per step on those goals: what the batch alone changes.
paper_test() {
  "$FA" eval "runs/$1" --split paper --episodes 40 --shots 40 --queries 40
  "$FA" eval "runs/$1" --split paper --episodes 40
}
# The same with training seeds 1 and 2 (the test and validation goals are seed 0's): how much of
# the gap to the paper is one training run's luck. Two jobs, one core each.
point2d_seed() {
  local name=maml-trpo-point2d-full-seed$1 f
  OMP_NUM_THREADS=1 train "$name" maml-trpo-point2d --set seed="$1"
  for f in 0.5 0.25 0.1; do
    "$FA" eval "runs/$name" --split val --episodes 40 --seed 1235 --set learner.args.eval_later_lr_factor=$f
  done
  "$FA" eval "runs/$name" --set learner.args.eval_later_lr_factor=0.25  # seed 0's choice on validation
  paper_test "$name"
  keep "$name"
}
job_maml-trpo-point2d-full-seed1() { point2d_seed 1; }
job_maml-trpo-point2d-full-seed2() { point2d_seed 2; }
# The same training (identical iteration for iteration), the iterate selected on the validation
# return after one step instead of three: the paper tested "the best average return during
# training", which for MAML-TRPO is the return after its one step. Seeds 0 and 1, one core each.
point2d_sel1() {
  local name=maml-trpo-point2d-sel1-seed$1
  OMP_NUM_THREADS=1 train "$name" maml-trpo-point2d --set seed="$1" --set train.select_metric=return_after_1
  "$FA" eval "runs/$name"
  paper_test "$name"
  keep "$name"
}
job_maml-trpo-point2d-sel1-seed0() { point2d_sel1 0; }
job_maml-trpo-point2d-sel1-seed1() { point2d_sel1 1; }
# ProMP with the authors' settings on the same batch, shortened to 100 of the 500 iterations
# (compare the training curve with maml-trpo-point2d-full's metrics.csv at equal iterations).
job_promp-point2d() { OMP_NUM_THREADS=1 train promp-point2d promp-point2d --set train.steps=100; keep promp-point2d; }
# RL2 with PPO on 2D navigation: 100 iterations (8M environment steps), and the preset's 500.
job_rl2-point2d() { OMP_NUM_THREADS=1 train rl2-point2d rl2-point2d --set train.steps=100; keep rl2-point2d; }
job_rl2-point2d-full() { OMP_NUM_THREADS=1 train rl2-point2d-full rl2-point2d; keep rl2-point2d-full; }
# HalfCheetah direction, shortened to 8 of the paper's 500 iterations (2.6M environment steps;
# about 3.5 min per iteration on one core beside three other jobs): a first point, not a replication.
job_maml-trpo-cheetah-dir() {
  OMP_NUM_THREADS=1 train maml-trpo-cheetah-dir maml-trpo-cheetah-dir --set train.steps=8 --set train.checkpoint_every=1
  keep maml-trpo-cheetah-dir
}
# HalfCheetah velocity, shortened the same way (8 of 500 iterations, 2.6M environment steps).
job_maml-trpo-cheetah-vel() {
  OMP_NUM_THREADS=1 train maml-trpo-cheetah-vel maml-trpo-cheetah-vel --set train.steps=8 --set train.checkpoint_every=1
  keep maml-trpo-cheetah-vel
}
# Meta-World ML1 at Meta-World+'s MAML-TRPO budget (2M environment steps = the presets' 8
# iterations); on one core beside another job, 6-7 min per iteration, then about 15 min of test.
job_maml-trpo-ml1-reach() { train maml-trpo-ml1-reach maml-trpo-ml1-reach; keep maml-trpo-ml1-reach; }
job_maml-trpo-ml1-push() { train maml-trpo-ml1-push maml-trpo-ml1-push; keep maml-trpo-ml1-push; }
job_maml-trpo-ml1-pick-place() { train maml-trpo-ml1-pick-place maml-trpo-ml1-pick-place; keep maml-trpo-ml1-pick-place; }
# Meta-World ML10, shortened to 12 of the preset's 75 iterations (2.4M of Meta-World+'s 15M
# environment steps; about 4 min per iteration on one core), then the test on the 5 held-out
# environments: a first point, not the budget.
job_maml-trpo-ml10() { train maml-trpo-ml10 maml-trpo-ml10 --set train.steps=12; keep maml-trpo-ml10; }
# RL² on ML1 reach at the same 2M environment steps (16 of the preset's 4000 iterations of 125k
# steps): the equal-budget comparison with MAML-TRPO; about 4 min per iteration beside 2-3 jobs.
job_rl2-ml1-reach-2m() { train rl2-ml1-reach-2m rl2-ml1-reach --set train.steps=16; keep rl2-ml1-reach-2m; }
# Baselines with the same test protocol: the random initial policy adapted by the same steps
# (outer: none, nothing is trained), and one policy pretrained on all tasks jointly by TRPO.
job_random-point2d() {
  train random-point2d maml-trpo-point2d --set learner.args.outer=none --set train.steps=1 --set data.val_split=null
  keep random-point2d
}
# The pretrained baseline at the preset's 500 iterations (39 min): validation picks iteration 100;
# by 500 its std is 0.03-0.05 and test-time fine-tuning diverges (-407 on validation goals).
job_pretrained-point2d() { OMP_NUM_THREADS=1 train pretrained-point2d pretrained-point2d; keep pretrained-point2d; }

# -- issue 13: hyper-parameter search (Optuna) -------------------------------------------------
# Two `fastadapt tune` processes (one thread each: run this job alone) share one study in a
# throwaway PostgreSQL server (127.0.0.1 only): 24 trials of 2000 meta-batches over
# scripts/tune_sinusoid_space.yaml, median pruning; the preset's default is trial 0. Then two runs
# of 10000 meta-batches (of the preset's 70000: what fits beside the tuning on this shared 2-core
# machine), one from the best trial (`train --from-study`) and one with the preset's default,
# tested after 1 / 5 / 10 steps on the same 600 test tasks. The study is copied into SQLite.
job_tune-maml-sinusoid() {
  local study=runs/tune-maml-sinusoid best=tune-maml-sinusoid-best default=tune-maml-sinusoid-default pg url first second
  pg=$(mktemp -d /tmp/fastadapt-pg.XXXXXX)
  url=$("$PY" scripts/throwaway_postgres.py start "$pg")
  local tune=("$FA" tune maml-sinusoid-5shot --space scripts/tune_sinusoid_space.yaml --trials 24 --storage "$url"
              --out "$study" --quiet --set train.engine=vmap --set train.workers=1)
  local started=$SECONDS
  "${tune[@]}" & first=$!
  sleep 5  # the first process creates the study (and queues the preset's default as trial 0)
  "${tune[@]}" & second=$!
  wait "$first" && wait "$second" || { "$PY" scripts/throwaway_postgres.py stop "$pg"; return 1; }
  echo "tuning: $((SECONDS - started)) s" | tee "$study/wall_time.txt"
  "${tune[@]}"  # the report, once every trial is done
  "$PY" -c "import optuna, sys; optuna.copy_study(from_study_name='maml-sinusoid-5shot-tune', \
      from_storage=sys.argv[1].replace('postgresql://', 'postgresql+psycopg://'), to_storage='sqlite:///' + sys.argv[2])" \
      "$url" "$study/study-copy.db"
  local short=(--set train.steps=10000 --set train.val_every=2500 --set train.checkpoint_every=2500)
  "$FA" train --from-study "$study" "${short[@]}" --out "runs/$best" --quiet & first=$!
  train "$default" maml-sinusoid-5shot --set train.engine=vmap "${short[@]}" & second=$!
  wait "$first" && wait "$second" || { "$PY" scripts/throwaway_postgres.py stop "$pg"; return 1; }
  "$PY" scripts/throwaway_postgres.py stop "$pg"; rm -rf "$pg"
  # The full schedule (the preset's 70000 meta-batches) from the best trial, read from the study's
  # SQLite copy now that the server is gone: about 20 minutes on one quiet core.
  OMP_NUM_THREADS=1 "$FA" train --from-study "$study" --study-storage "$study/study-copy.db" \
      --set train.engine=vmap --set train.workers=1 --out "runs/$best-full" --quiet || return 1
  for run in "$best" "$default" "$best-full"; do
    for k in 5 10; do "$FA" eval "runs/$run" --adapt-steps $k; done
    keep "$run"
  done
  mkdir -p "results/$best/study"
  cp "$study"/{results.md,trials.csv,study.json,wall_time.txt,study-copy.db,*.png} scripts/tune_sinusoid_space.yaml "results/$best/study/"
  "$PY" scripts/tune_summary.py "results/$best" "results/$default" --full results/maml-sinusoid-5shot \
      --best-full "results/$best-full"
}

# -- issue 11: few-shot text, episodic protocol (class split 0) --------------------------------
# 5-way 1-/5-shot, 5 queries, 600 fixed test episodes on the test intents, all on frozen
# all-MiniLM-L6-v2 embeddings (computed once, cached): ProtoNets and logistic regression (nothing
# to meta-train: 0 steps), MAML on a linear head, ANIL (MLP body + adapted head) and a
# ProtoNet-trained MLP adapter (the presets' own short schedules); on token ids, the encoder's top
# two layers fine-tuned per episode (finetune-encoder, 0 steps) or meta-trained with the ProtoNet
# loss (metatrain-encoder). Other class splits: --set data.args.class_split=K.
TEXT_JOBS=()
for preset in {protonet,logreg,maml-head,anil,protonet-adapter,finetune-encoder,metatrain-encoder}-{banking77,clinc150}-5w{1,5}s; do
  eval "job_$preset() { train $preset $preset; keep $preset; }"
  TEXT_JOBS+=("$preset")
done

JOBS=(maml-sinusoid-5shot pretrained-sinusoid-5shot maml-sinusoid-10shot pretrained-sinusoid-10shot
      maml-5w1s protonet-5w1s fomaml-5w1s matching-20w1s anil-5w1s relation-5w1s metasgd-5w1s siamese-5w1s
      reptile-5w1s baseline-5w1s baselinepp-5w1s multitask-5w1s gnn-5w1s cnp-5w1s gnn-20w1s cnp-20w1s
      cnp-gp1d np-gp1d
      protonet-lake siamese-lake matching-lake relation-lake baseline-lake baselinepp-lake gnn-lake cnp-lake multitask-lake
      anil-20w1s maml-20w1s metasgd-20w1s fomaml-20w1s reptile-20w1s
      maml-sinusoid-5shot-learned-lr maml-sinusoid-5shot-learned-lr-q20 maml-sinusoid-5shot-lslr-cosine
      maml-sinusoid-5shot-cosine maml-sinusoid-5shot-learned-lr-cosine metasgd-sinusoid-5shot
      maml-5w1s-1000 fomaml-5w1s-1000 maml-trpo-point2d maml-trpo-point2d-full maml-trpo-point2d-full-seed1
      maml-trpo-point2d-full-seed2 maml-trpo-point2d-sel1-seed0 maml-trpo-point2d-sel1-seed1 random-point2d pretrained-point2d
      promp-point2d rl2-point2d rl2-point2d-full maml-trpo-cheetah-dir maml-trpo-cheetah-vel maml-trpo-ml1-reach maml-trpo-ml1-push maml-trpo-ml1-pick-place maml-trpo-ml10 rl2-ml1-reach-2m tune-maml-sinusoid text-fullway)
JOBS+=("${TEXT_JOBS[@]}")

case "${1:-}" in
  list) printf '%s\n' "${JOBS[@]}" ;;
  run) shift; for job in "$@"; do "job_$job"; done ;;
  keep) shift; for name in "$@"; do keep "$name"; done ;;
  table) job_sinusoid-figure; "$FA" results results/*/ --plot results/comparison.png >/dev/null; [ -d results/text ] && "$PY" benchmarks/text_table.py results/text; "$PY" scripts/results_md.py ;;
  *) echo "usage: $0 list | run JOB... | keep NAME... | table" >&2; exit 2 ;;
esac
