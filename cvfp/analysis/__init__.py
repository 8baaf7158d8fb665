"""Reading results (report stage, flows.compare, tasks.generate): the report, its wording and number formats, comparisons, generation. No training stage imports it."""
