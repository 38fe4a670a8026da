"""``python -m nxmlab``: the ``nxmlab`` command line (:func:`nxmlab.study.cli.commands.main`).

Only ``python -m nxmlab`` runs this file; ``import nxmlab`` never imports the study layer.
"""

from .study.cli.commands import main

raise SystemExit(main())
