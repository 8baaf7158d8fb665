"""The metrics files, each defined once as a pydantic model: the stage that writes a file
builds it through its model (a missing, renamed or unknown key fails at write time) and the
report parses it back into the same model. One module per file, so a change to one schema
reruns only the stage that writes it (and the report):

* data.py     metrics/data.json        (split)
* phase1.py   metrics/phase1.json and cache/phase1/checks.json  (phase1)
* phase2.py   metrics/phase2.json and plots/phase2_epochs.csv rows  (phase2)
* summary.py  metrics/summary.json     (report)
* compare.py  metrics/compare.json     (flows.compare / tasks.compare; not a stage)
"""
