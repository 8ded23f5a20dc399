"""Forensics: tests a dispute needs beyond "is this text marked" -- whether a suspect model was trained
on our marked text (:mod:`.radioactivity`), whether a mark was learned and forged (:mod:`.stealing`,
:mod:`.spoof`), and whether an API watermarks at all, and with what family of scheme (:mod:`.probe`)."""
