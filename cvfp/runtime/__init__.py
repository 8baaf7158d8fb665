"""What every stage shares: the torchrun world, seeding, atomic outputs and progress (utils), sharded maps, the metrics files' base model."""
