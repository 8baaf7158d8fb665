"""What the training stages share (phase1, materialize, phase2): the CVFP model, conversations and the sequential pass, context files, checkpoints, the optimizer step."""
