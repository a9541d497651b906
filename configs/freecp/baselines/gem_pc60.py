# GEM baseline at FreeCP's settings on PASCAL Context 60 (FreeCP paper Tables 1, 3
# and 4 "Baseline"; Table 2 quotes the official GEM numbers instead,
# configs/baselines/gem_pc60.py). The FreeCP config ../gem_pc60.py with the
# baseline's head: same strategy, vocabulary, prompts, short side 448 and
# 384/112 windows; settings of the baseline used here:
# - strategy: GEM as published (residual self-self path of the last 6 blocks);
# - scoring: CosineSimilarityHead, softmax(tau * cos) over all queries, max over
#   synonyms, tau 40 (configs/baselines/gem_pc60.py);
# - no prob_thd, area_thd or PAMR (FreeCP's settings; the official baseline's
#   rules are --cfg-options model.prob_thd=... model.area_thd=...).
_base_ = ['../gem_pc60.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=40.0))
