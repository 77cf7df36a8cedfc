"""The entry points: the command line (``unitune ...``), the ``run`` pipeline over the stages and
``compare``. The top layer: nothing in the distribution imports it."""
