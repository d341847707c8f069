"""Transfer baselines: pretrain on all training classes or tasks, fine-tune on the support set."""
