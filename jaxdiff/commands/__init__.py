"""The command modes of `python -m jaxdiff.main`, above the trainer.

  sample.py    --mode=sample   N samples from a run's latest checkpoint
  evaluate.py  --mode=eval     FID (or the built-in quality figure) of one checkpoint
  analyze.py   --mode=analyze  the curriculum paper's difficulty study
  compile.py   --compile_only  every stage's train step compiled for the mesh, with
                               XLA's memory and FLOP estimates; nothing trains
"""
