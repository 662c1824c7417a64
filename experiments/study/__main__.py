"""`python -m experiments.study STUDY --out DIR`: see experiments/study/runner.py."""
import sys

from experiments.study.runner import main

sys.exit(main())
