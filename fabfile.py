from tasks import deploy_namespace; ns = deploy_namespace(machine_positional=False)  # noqa: E702 - fab finds `ns`
