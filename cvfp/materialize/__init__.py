"""C* materialization (the materialize stage): the trained Phase 1 model's context for every token."""
