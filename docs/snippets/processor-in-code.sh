.venv/bin/python examples/processor_in_code.py
