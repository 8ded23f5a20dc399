"""Forensics: tests a dispute needs beyond "is this text marked" -- whether a suspect model was trained
on our marked text (:mod:`.radioactivity`)."""
