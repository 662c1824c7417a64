"""The bottom floor: the vocabulary every layer of the project imports.

errors.py    the project's input-error classes (one-line messages, exit status 2)
registry.py  name -> class registries chosen by config strings
linear.py    projections as 2-D matmuls
context.py   ForwardContext: train flag, step and RNG a forward pass may read
dtypes.py    compute dtypes by config name
layer_aux.py LayerAux: a layer's auxiliary losses and metrics, beside its output

Nothing here imports anything else from the project.
"""
