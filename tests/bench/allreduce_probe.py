"""One rank of `make bench --only distributed`'s communication probe (run by torchrun): times
the all-reduce of a gradient-sized fp32 buffer, as DDP does once per step for the LoRA weights,
on this machine's backend (gloo on a CPU, nccl on GPUs). Rank 0 prints the median in ms."""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    elements, reps = int(sys.argv[1]), int(sys.argv[2])
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu"
    buffer = torch.ones(elements, dtype=torch.float32, device=device)
    times = []
    for rep in range(reps + 2):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(buffer)
        if cuda:
            torch.cuda.synchronize()
        if rep >= 2:  # the first two set up the connections
            times.append(time.perf_counter() - started)
    if dist.get_rank() == 0:
        print(f"ALLREDUCE_MS {statistics.median(times) * 1e3:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
