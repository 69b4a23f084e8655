"""How the lab draws: one style (:mod:`.style`), every seed with the mean and its 95% interval (:mod:`.seeds`),
every claim at a glance (:mod:`.claims`). The figures themselves are their studies' (``soap_lab/studies/``)."""
