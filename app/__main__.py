import logging
import os
import sys

from .cli import main

code = main()
if len(sys.argv) > 1 and sys.argv[1] == "predict":
    # Every mask is written (temporary file, then rename) and every file closed by now. The
    # interpreter's own teardown, unloading torch and the inference engines and freeing the models,
    # takes about 0.6 s of each process, which the organisers time as part of each case
    # (benchmarks/README.md, "Process exit"); flush what is buffered and leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
