"""nixfab: deploy NixOS flake configurations over SSH.

Importing this package stays cheap (no Fabric, paramiko or rich) so that
Invoke's tab completion, which imports tasks.py on every TAB, stays fast.
"""

__version__ = "0.1.0"
