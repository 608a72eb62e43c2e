"""The training machinery every protocol shares: Caffe's SGD solver and learning-rate policies (`solver`),
checkpoints with exact resume (`checkpoint`), torchrun helpers (`distributed`), data sources with exact state
(`sources`), the generic training loop (`loop`), the environment stamp (`stamp`) and training curves (`plots`).
Import the submodules directly."""
