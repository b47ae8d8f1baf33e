/* hooks.h — firing registered hooks from the forward pass. */
#ifndef LOUPE_HOOKS_H
#define LOUPE_HOOKS_H

#include "session.h"

/* 1 if some hook listens on point p at this layer. */
int lp_hooks_want(const loupe_session *s, loupe_hook_point p, int layer);
/* Calls the hooks of (p, layer); returns 1 if one asked to abort. */
int lp_hooks_fire(loupe_session *s, loupe_hook_point p, int layer, int pos0, int T,
                  int width, int n_heads, float *data);

#endif
