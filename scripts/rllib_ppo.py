"""A few RLlib PPO iterations on LossTuning-v0, its envs built on remote env runners.

    python scripts/rllib_ppo.py [--iterations 3] [--env-runners 1] [--address ADDRESS]

The env is registered with Ray's registry by :func:`agents.rllib_env.register`; each env runner
builds it from the JSON ``env_config`` (a small fixed task here, so that an iteration takes
seconds on a laptop). Prints the env steps sampled and the mean episode return per iteration.
Needs ``pip install 'lossgym[ray]'``.
"""

from __future__ import annotations

import argparse
import time

from agents.rllib_env import ENV_NAME, env_config, register
from lossgym.tasks import TaskSpec

TASK = TaskSpec(imbalance_ratio=20.0, n_max=300, width=32, batch_size=32,
                minibatches_per_step=2, horizon=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--env-runners", type=int, default=1)
    parser.add_argument("--address", default=None, help="a running cluster (default: local)")
    args = parser.parse_args()
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.env_runners + 1, include_dashboard=False, log_to_driver=False)
    register()
    config = (PPOConfig()
              .environment(ENV_NAME, env_config=env_config(TASK, device="cpu"))
              .env_runners(num_env_runners=args.env_runners, rollout_fragment_length=32)
              .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=2))
    algo = config.build_algo()
    start = time.perf_counter()
    for i in range(args.iterations):
        result = algo.train()
        runners = result["env_runners"]
        print(f"iteration {i}: {runners['num_env_steps_sampled_lifetime']} env steps, "
              f"mean episode return {runners.get('episode_return_mean', float('nan')):.4f}, "
              f"{time.perf_counter() - start:.1f} s")
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
