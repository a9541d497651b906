# ClearCLIP baseline at FreeCP's settings on ADE20K-150 (FreeCP paper Tables 1, 3
# and 4 "Baseline"; Table 2 quotes the official ClearCLIP numbers instead,
# configs/baselines/clearclip_ade.py). The FreeCP config ../clearclip_ade.py with the
# baseline's head: same strategy, vocabulary, prompts, short side 448 and
# 384/112 windows; settings of the baseline used here:
# - strategy: ClearCLIP as published (no residual, no FFN);
# - scoring: CosineSimilarityHead, softmax(tau * cos) over all queries, max over
#   synonyms, tau 50 (configs/baselines/clearclip_ade.py);
# - no prob_thd, area_thd or PAMR (FreeCP's settings; the official baseline's
#   rules are --cfg-options model.prob_thd=... model.area_thd=...).
_base_ = ['../clearclip_ade.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=50.0))
