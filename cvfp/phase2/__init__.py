"""Phase 2 (the phase2 stage): the next-token trainer and its loss, the position data, evaluation, the baselines, metrics/phase2.json's model."""
