#!/usr/bin/env bash
# The GPU checks of the engine issue, as one script for a lent CUDA machine:
# the `gpu`-marked tests, then `llmos bench engine` on the ~1B dummy preset.
# Packages the machine lacks travel as wheels in .whl/ (git-ignored), made on a machine
# with an index (Python 3.12 target, as on the lent machines):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 pyzmq==27.3.0 protobuf==7.36.2 regex==2026.11.19
# Then the paged engine with --cuda-graphs at GRAPH_LEVELS (default 1,8,32,64,256; NO_GRAPHS=1
# skips it). Logs go to $OUT. EXTRA_LEVELS=64,128,256 adds an engine-only run at those levels;
# PROFILE=1 adds scripts/gpu_profile.py (ms per decode step, cProfile, torch profiler);
# CHURN=1 adds `llmos bench engine --churn-requests 256` (mixed steps against newcomers
# prefilled apart) and scripts/gpu_churn.py (the engine with requests coming and going, against one
# wave) and STACK=1 `llmos bench engine --stack-requests 256` (the stack against the engine).
# CPU=1 adds the engine on the host's CPU (another CPU kind than the development VM's):
# dummy:llama-100m, 2 threads, 32 concurrent, against generate_batch and the matmul peak.
# SCALE=1 adds the broker at scale on the host's cores (no GPU): `llmos bench sched`'s scale
# run with 1,000 simulated workers, one broker, then SCALE_BROKERS (default 4) sharing the kernel.
# One call of the device tool may run 600 s: the default parts (tests, engine, graphs) take
# at most 590 s by their timeouts, so run the options in a second call on the warm machine,
# with NO_DEFAULT=1 (no tests, no engine run) and NO_GRAPHS=1, e.g. NO_DEFAULT=1 NO_GRAPHS=1 CPU=1
# SCALE=1 (at most 300 s and 2 x 140 s).
#   NO_WHEELS=1 MODEL=dummy:llama-tiny DEVICE=cpu scripts/gpu_check.sh   (a dry run here)
set -u -o pipefail
OUT=${OUT:-/tmp/llmos-gpu-check}
MODEL=${MODEL:-dummy:llama-1b}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c 'import torch, transformers, zmq, google.protobuf as p; print("torch", torch.__version__,
"transformers", transformers.__version__, "protobuf", p.__version__, "cuda", torch.cuda.is_available())'
if [ -z "${NO_DEFAULT:-}" ]; then  # the gpu tests and the engine against transformers
    timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_batched_engine_gpu.py \
        tests/test_cuda_graphs_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log"
    timeout 240 python3 -m llmos bench engine --model "$MODEL" --device "$DEVICE" \
        ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_engine.log"
fi
if [ "$DEVICE" != cpu ] && [ -z "${NO_GRAPHS:-}" ]; then  # the paged engine with CUDA graphs
    timeout 170 python3 -m llmos bench engine --model "$MODEL" --device "$DEVICE" --skip-baselines \
        --poisson-seconds 0 --concurrency "${GRAPH_LEVELS:-1,8,32,64,256}" --engine paged --cuda-graphs \
        --rounds 1 2>&1 | tee "$OUT/bench_graphs.log"
fi
if [ -n "${EXTRA_LEVELS:-}" ]; then  # the engine alone at higher concurrency, no baselines
    timeout 90 python3 -m llmos bench engine --model "$MODEL" --device "$DEVICE" --skip-baselines \
        --poisson-seconds 0 --concurrency "$EXTRA_LEVELS" 2>&1 | tee "$OUT/bench_engine_high.log"
fi
if [ -n "${PROFILE:-}" ]; then  # where a decode step's time goes, cuDNN attention on and off
    timeout 120 python3 scripts/gpu_profile.py "$MODEL" "$DEVICE" 2>&1 | tee "$OUT/profile.log"
fi
if [ -n "${CHURN:-}" ]; then  # why the engine is slow when requests come and go (docs/benchmarks.md)
    timeout 150 python3 -m llmos bench engine --model "$MODEL" --device "$DEVICE" --concurrency 32 \
        --skip-baselines --poisson-seconds 0 --new-tokens 16 --prompt-len 128 \
        --churn-requests 256 --rounds 3 2>&1 | tee "$OUT/bench_churn.log"
    timeout 180 python3 scripts/gpu_churn.py "$MODEL" "$DEVICE" 2>&1 | tee "$OUT/churn.log"
fi
if [ -n "${STACK:-}" ]; then  # what serving costs: the stack against the engine alone
    timeout 240 python3 -m llmos bench engine --model "$MODEL" --device "$DEVICE" --concurrency 32 \
        --skip-baselines --poisson-seconds 0 --new-tokens 16 --prompt-len 128 \
        --stack-requests 256 --rounds 2 2>&1 | tee "$OUT/bench_stack.log"
fi
if [ -n "${CPU:-}" ]; then  # the CPU targets on this machine's CPU kind (its model name is logged)
    lscpu 2>&1 | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400 | tee "$OUT/cpu.txt"
    python3 -c 'from workers import cpu_kernels; print("llmos cpu kernels:", cpu_kernels.has_kernels())' \
        2>&1 | tee -a "$OUT/cpu.txt"
    timeout 300 python3 -m llmos bench engine --model dummy:llama-100m --device cpu --threads 2 \
        --concurrency 32 --poisson-seconds 0 --rounds 3 2>&1 | tee "$OUT/bench_cpu.log"
fi
if [ -n "${SCALE:-}" ]; then  # 10,000 requests/s with 1,000 simulated workers: one broker, then several
    nproc 2>&1 | tee "$OUT/scale_cores.txt"
    for brokers in 1 "${SCALE_BROKERS:-4}"; do
        timeout 140 python3 -m llmos bench sched --skip-chat --skip-fair --no-scale-stream \
            --no-scale-insecure-baseline --scale-workers 1000 --scale-requests 100000 \
            --scale-in-flight 4800 --scale-sim-processes 8 --scale-clients 8 --scale-brokers "$brokers" \
            2>&1 | tee "$OUT/bench_scale_$brokers.log"
    done
fi
