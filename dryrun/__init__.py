"""`python -m dryrun.run --study aokvqa`: a whole study at the teacher's real shapes, offline.

It drives `search`, `distill` and `reports` end to end (search, promote, finalize, report), so it sits
above all three; nothing imports it.
"""
