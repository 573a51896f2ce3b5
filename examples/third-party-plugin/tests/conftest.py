# fewmask's fixtures (tiny_dataset, registry), a fresh default registry and torch seed 0 per test
pytest_plugins = ["fewmask.pytest_plugin"]
