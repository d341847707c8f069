"""Datasets as few-shot tasks: Omniglot class pools and episode samplers, the Lake one-shot
benchmark, and sinusoid regression. Every source yields `Episode`s."""
from .download import download_file
from .episode import Episode
from .lake import LakeRun, lake_episode, load_lake_runs, score_lake
from .omniglot import (ClassPool, OmniglotCharacters, load_omniglot_characters, omniglot_pool,
                       preprocess_image)
from .sampler import EpisodeSampler, FixedEpisodes
from .sinusoid import SinusoidTasks, sinusoid

__all__ = ["ClassPool", "Episode", "EpisodeSampler", "FixedEpisodes", "LakeRun", "OmniglotCharacters",
           "SinusoidTasks", "download_file", "lake_episode", "load_lake_runs", "load_omniglot_characters",
           "omniglot_pool", "preprocess_image", "score_lake", "sinusoid"]
