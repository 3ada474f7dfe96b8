pytest_plugins = ["deploy.lab_pytest"]
