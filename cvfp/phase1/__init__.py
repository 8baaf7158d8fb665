"""Phase 1 (the phase1 stage): the fixed-point trainer and its loss, the guard, the checks and their rules (numbers only), diversity, reconstruction, metrics/phase1.json."""
