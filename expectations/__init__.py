"""Great Expectations suites for reasoning datasets. `reasoning_dataset` flattens rows into the
columns the suite checks and builds the suite from a framework's style and principles."""
