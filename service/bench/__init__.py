"""`espalier bench answers`: speed and quality of each answer mode on a question set.

questions (loading question sets and router labels), judge (pairwise verdicts, in both orders),
answers (the orchestration: runners per mode, statistics, the result JSON), report (markdown and
the PNG plot), stream_set (the multiple-choice set of `espalier bench stream`, in data/, and its
grading). The command line lives in service/bench_cli.py.
"""
