"""The experiments of the repository's ``experiments/`` folder: the runner (``runner``), the
data sets they train and test on (``sets``) and the markdown report (``report``)."""
