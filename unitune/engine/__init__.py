"""The run engine: the run config, backbone building, the training loop, pretraining, supernet
training and the stand-alone training of one subnet that the re-rank and the retrain share.

It sits above the PEFT library (``unitune.supernet``) and the data package and below the stages
(``unitune.search``, ``unitune.retrain``) and the commands; it never imports Optuna."""
