# pytest puts tests/ (it has no __init__.py) on sys.path to import this file, so the plugin is the top-level module lab_plugin.
pytest_plugins = ["lab_plugin"]
