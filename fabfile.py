"""`fab -H user@host TASK`: the same tasks as tasks.py, with the machine taken from -H.

`fab -H a,b TASK` deploys a and b as one fleet (one check, one build, one summary) for
the tasks that take several hosts; Fabric alone would run the task once per host.
"""
from deploy.cli import invoke_compat
from tasks import namespace

invoke_compat.install_fabric(invoke_compat.takes_several_hosts)

ns = namespace()
