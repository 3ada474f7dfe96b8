"""`fab -H user@host TASK`: the same tasks as tasks.py, with the machine taken from -H."""
from tasks import namespace

ns = namespace()
