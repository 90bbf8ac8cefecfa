/* The autograd engine: grad mode, per-tensor state, nodes, and the backward pass. */
#include <stdlib.h>
#include <string.h>
#include "autograd.h"
#include "autocast.h"
#include "ops.h"
#include "profile.h"

static _Thread_local int grad_off;

bool vtl_grad_enabled(void) { return !grad_off; }
void vtl_set_grad_enabled(bool on) { grad_off = !on; }

static vtl_autograd_meta *meta_of(vtl_tensor *t) {
  if (!t->ag) t->ag = calloc(1, sizeof *t->ag);
  return t->ag;
}

bool vtl_requires_grad(const vtl_tensor *t) { return t->ag && (t->ag->requires_grad || t->ag->grad_fn); }
vtl_tensor *vtl_grad(const vtl_tensor *t) { return t->ag ? t->ag->grad : NULL; }
vtl_node *vtl_grad_fn(const vtl_tensor *t) { return t->ag ? t->ag->grad_fn : NULL; }

vtl_status vtl_set_requires_grad(vtl_tensor *t, bool on) {
  if (t->ag && t->ag->grad_fn) {
    if (on) return VTL_OK;
    return vtl_error_set(VTL_ERR_ARG, "requires_grad: only leaf tensors can stop requiring grad; use detach()");
  }
  if (on && !vtl_dtype_is_float(t->dtype))
    return vtl_error_set(VTL_ERR_ARG, "requires_grad: only float tensors can require grad, got %s", vtl_dtype_name(t->dtype));
  if (!on && !t->ag) return VTL_OK;
  vtl_autograd_meta *m = meta_of(t);
  if (!m) return vtl_error_set(VTL_ERR_OOM, "requires_grad: out of memory");
  m->requires_grad = on;
  return VTL_OK;
}

vtl_status vtl_set_grad(vtl_tensor *t, vtl_tensor *g) {
  if (g) {
    if (g->ndim != t->ndim || memcmp(g->shape, t->shape, (size_t)t->ndim * sizeof *t->shape) != 0) {
      char a[128], b[128];
      vtl_shape_format(g->shape, g->ndim, a, sizeof a);
      vtl_shape_format(t->shape, t->ndim, b, sizeof b);
      return vtl_error_set(VTL_ERR_ARG, "grad: gradient of shape %s does not match the tensor's shape %s", a, b);
    }
  }
  vtl_autograd_meta *m = meta_of(t);
  if (!m) return vtl_error_set(VTL_ERR_OOM, "grad: out of memory");
  if (g) vtl_tensor_retain(g);
  vtl_tensor_release(m->grad);
  m->grad = g;
  return VTL_OK;
}

void vtl_autograd_meta_free(vtl_autograd_meta *m) {
  if (!m) return;
  vtl_tensor_release(m->grad);
  vtl_node_release(m->grad_fn);
  free(m);
}

bool vtl_ag_needs(vtl_tensor *const *inputs, int n) {
  if (grad_off) return false;
  for (int i = 0; i < n; i++)
    if (inputs[i] && vtl_requires_grad(inputs[i])) return true;
  return false;
}

vtl_node *vtl_ag_node(const char *name, vtl_backward_fn bw, vtl_tensor *const *inputs, int n) {
  vtl_node *nd = calloc(1, sizeof *nd);
  if (!nd) return vtl_error_set(VTL_ERR_OOM, "%s: out of memory", name), NULL;
  nd->refcount = 1;
  nd->name = name;
  nd->backward = bw;
  nd->ninputs = n;
  for (int i = 0; i < n; i++) {
    vtl_tensor *t = inputs[i];
    if (!t) continue;
    nd->in_ndim[i] = t->ndim;
    memcpy(nd->in_shape[i], t->shape, (size_t)t->ndim * sizeof *t->shape);
    nd->in_dtype[i] = t->dtype;
    if (!vtl_requires_grad(t)) continue;
    nd->needs[i] = true;
    if (t->ag->grad_fn) {
      nd->next[i].fn = t->ag->grad_fn;
      vtl_node_retain(t->ag->grad_fn);
    } else {
      nd->next[i].leaf = vtl_tensor_retain(t);
    }
  }
  return nd;
}

vtl_tensor *vtl_detach(vtl_tensor *t) {
  return vtl_tensor_view_of(t, t->shape, t->strides, t->ndim, t->offset);
}

void vtl_ag_save(vtl_node *node, vtl_tensor *t) {
  if (node->nsaved >= VTL_NODE_MAXSAVED) return;
  int k = node->nsaved++;
  node->saved[k] = t ? vtl_detach(t) : NULL;
  node->saved_version[k] = t ? t->storage->version : 0;
}

vtl_tensor *vtl_ag_saved(vtl_node *node, int k) {
  vtl_tensor *t = node->saved[k];
  if (t && t->storage->version != node->saved_version[k]) {
    vtl_error_set(VTL_ERR_ARG, "backward: a tensor saved by %s was modified by an in-place operation after it "
                  "was used; use an out-of-place operation or clone() it first", node->name);
    return NULL;
  }
  return t;
}

vtl_tensor *vtl_ag_attach(vtl_tensor *out, vtl_node *node) {
  vtl_autograd_meta *m = meta_of(out);
  if (!m) { vtl_node_release(node); return vtl_error_set(VTL_ERR_OOM, "%s: out of memory", node->name), NULL; }
  vtl_node_release(m->grad_fn);
  m->grad_fn = node;
  return out;
}

vtl_status vtl_ag_check_inplace(vtl_tensor *t, const char *op) {
  if (!grad_off && vtl_requires_grad(t))
    return vtl_error_set(VTL_ERR_ARG, "%s: in-place operation on a tensor that requires grad; use the out-of-place "
                         "form, or vtl.no_grad for updates", op);
  t->storage->version++;
  return VTL_OK;
}

void vtl_node_retain(vtl_node *n) { __atomic_add_fetch(&n->refcount, 1, __ATOMIC_RELAXED); }

/* Frees what a node kept for its backward; a node that kept nothing can run again. */
static void drop_saved(vtl_node *n) {
  bool had = n->ctx != NULL;
  for (int k = 0; k < n->nsaved; k++) {
    had |= n->saved[k] != NULL;
    vtl_tensor_release(n->saved[k]);
    n->saved[k] = NULL;
  }
  if (n->ctx && n->ctx_free) n->ctx_free(n->ctx);
  n->ctx = NULL;
  n->released |= had;
}

/* Iterative, so that long chains do not exhaust the C stack. */
void vtl_node_release(vtl_node *n) {
  vtl_node *stack_buf[64], **stack = stack_buf;
  int top = 0, cap = 64;
  if (n) stack[top++] = n;
  while (top) {
    vtl_node *x = stack[--top];
    if (__atomic_sub_fetch(&x->refcount, 1, __ATOMIC_ACQ_REL) != 0) continue;
    drop_saved(x);
    vtl_tensor_release(x->grad);
    for (int i = 0; i < x->ninputs; i++) {
      vtl_tensor_release(x->next[i].leaf);
      if (!x->next[i].fn) continue;
      if (top == cap) {
        vtl_node **bigger = malloc((size_t)cap * 2 * sizeof *bigger);
        if (!bigger) { vtl_node_release(x->next[i].fn); continue; } /* recursion as a last resort */
        memcpy(bigger, stack, (size_t)top * sizeof *stack);
        if (stack != stack_buf) free(stack);
        stack = bigger;
        cap *= 2;
      }
      stack[top++] = x->next[i].fn;
    }
    free(x);
  }
  if (stack != stack_buf) free(stack);
}

/* g summed down to shape (broadcast dims) and cast to dt; a new reference. */
static vtl_tensor *reduce_to(const vtl_node *n, vtl_tensor *g, const int64_t *shape, int nd, vtl_dtype dt) {
  /* g must equal the input's shape up to broadcasting */
  int ok = g->ndim >= nd;
  for (int d = 0; ok && d < nd; d++) {
    int64_t gs = g->shape[g->ndim - nd + d];
    ok = gs == shape[d] || shape[d] == 1;
  }
  if (!ok) {
    char a[128], b[128];
    vtl_shape_format(g->shape, g->ndim, a, sizeof a);
    vtl_shape_format(shape, nd, b, sizeof b);
    return vtl_error_set(VTL_ERR_ARG, "backward: %s gave a gradient of shape %s for an input of shape %s", n->name, a, b), NULL;
  }
  vtl_tensor *r = vtl_tensor_retain(g);
  if (g->ndim != nd || memcmp(g->shape, shape, (size_t)nd * sizeof *shape) != 0) {
    uint32_t mask = 0;
    int lead = g->ndim - nd;
    if (lead < 0) { vtl_tensor_release(r); return vtl_error_set(VTL_ERR_ARG, "backward: gradient has fewer dims than its input"), NULL; }
    for (int d = 0; d < g->ndim; d++)
      if (d < lead || (shape[d - lead] == 1 && g->shape[d] != 1)) mask |= 1u << d;
    vtl_tensor *s = mask ? vtl_op_reduce(VTL_RED_SUM, r, mask, true, 0, NULL) : vtl_tensor_retain(r);
    vtl_tensor_release(r);
    if (!s) return NULL;
    r = vtl_op_reshape(s, shape, nd);
    vtl_tensor_release(s);
    if (!r) return NULL;
  }
  if (r->dtype != dt) {
    vtl_tensor *c = vtl_op_to_dtype(r, dt);
    vtl_tensor_release(r);
    r = c;
  }
  return r;
}

/* *acc += g, in place when *acc is exclusively ours, else into a new tensor. */
static vtl_status accumulate(vtl_tensor **acc, vtl_tensor *g) {
  if (!*acc) { *acc = vtl_tensor_retain(g); return VTL_OK; }
  vtl_tensor *a = *acc;
  if (a->refcount == 1 && a->storage->refcount == 1 && (vtl_tensor_is_contiguous(a) || vtl_tensor_keeps_channels_last(a)))
    return vtl_op_binary_(VTL_BIN_ADD, a, g, 0);
  vtl_tensor *s = vtl_op_binary(VTL_BIN_ADD, a, g);
  if (!s) return vtl_error_status();
  vtl_tensor_release(a);
  *acc = s;
  return VTL_OK;
}

static vtl_status accumulate_leaf(vtl_tensor *leaf, vtl_tensor *g) {
  vtl_autograd_meta *m = meta_of(leaf);
  if (!m) return vtl_error_set(VTL_ERR_OOM, "backward: out of memory");
  if (!m->grad) { /* the leaf owns a private copy in its own layout (channels-last or contiguous)
                      unless g is already that */
    bool cl = vtl_tensor_keeps_channels_last(leaf);
    bool fits = cl ? vtl_tensor_is_channels_last(g) : vtl_tensor_is_contiguous(g);
    if (g->refcount == 1 && g->storage->refcount == 1 && fits) {
      m->grad = vtl_tensor_retain(g);
      return VTL_OK;
    }
    vtl_tensor *c = cl ? vtl_tensor_empty_channels_last(g->shape, g->dtype, vtl_tensor_device(g)) : vtl_op_clone(g);
    if (c && cl && vtl_op_copy_(c, g) != VTL_OK) {
      vtl_tensor_release(c);
      c = NULL;
    }
    if (!c) return vtl_error_status();
    m->grad = c;
    return VTL_OK;
  }
  return accumulate(&m->grad, g);
}

typedef struct { vtl_node **v; int n, cap; } nodevec;

static int push(nodevec *s, vtl_node *x) {
  if (s->n == s->cap) {
    int cap = s->cap ? s->cap * 2 : 64;
    vtl_node **v = realloc(s->v, (size_t)cap * sizeof *v);
    if (!v) return 0;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = x;
  return 1;
}

static vtl_status backward_run(vtl_tensor *root, vtl_tensor *g, bool retain_graph);

/* the backward pass runs outside any autocast region, as PyTorch's */
vtl_status vtl_autograd_backward(vtl_tensor *root, vtl_tensor *g, bool retain_graph) {
  int ac = vtl_autocast_enter(VTL_F32);
  vtl_status st = backward_run(root, g, retain_graph);
  vtl_autocast_leave(ac);
  return st;
}

static vtl_status backward_run(vtl_tensor *root, vtl_tensor *g, bool retain_graph) {
  static unsigned generation;
  if (!vtl_requires_grad(root))
    return vtl_error_set(VTL_ERR_ARG, "backward: the tensor does not require grad and has no grad_fn");
  vtl_tensor *seed;
  if (!g) {
    if (vtl_tensor_numel(root) != 1) {
      char s[128];
      vtl_shape_format(root->shape, root->ndim, s, sizeof s);
      return vtl_error_set(VTL_ERR_ARG, "backward: a gradient can only be implied for a single-element output, "
                           "got shape %s; pass one, as in y:backward(g)", s);
    }
    seed = vtl_op_full(root->shape, root->ndim, 1, root->dtype, vtl_tensor_device(root));
  } else {
    if (g->ndim != root->ndim || memcmp(g->shape, root->shape, (size_t)g->ndim * sizeof *g->shape) != 0) {
      char a[128], b[128];
      vtl_shape_format(g->shape, g->ndim, a, sizeof a);
      vtl_shape_format(root->shape, root->ndim, b, sizeof b);
      return vtl_error_set(VTL_ERR_ARG, "backward: gradient of shape %s does not match the output's shape %s", a, b);
    }
    seed = vtl_op_to_dtype(g, root->dtype);
  }
  if (!seed) return vtl_error_status();
  vtl_node *start = root->ag->grad_fn;
  if (!start) { /* a leaf: its gradient is the seed */
    vtl_status st = accumulate_leaf(root, seed);
    vtl_tensor_release(seed);
    return st;
  }
  if (start->released) {
    vtl_tensor_release(seed);
    return vtl_error_set(VTL_ERR_ARG, "backward: the graph was freed by an earlier backward; pass {retain_graph = true} "
                         "to the first backward to run it again");
  }
  bool was_on = !grad_off;
  /* count, for each reachable node, the edges that will deliver to it */
  unsigned gen = ++generation;
  nodevec all = {0}, ready = {0};
  vtl_status st = VTL_OK;
  if (!push(&all, start)) st = vtl_error_set(VTL_ERR_OOM, "backward: out of memory");
  start->mark = gen;
  start->deps = 0;
  for (int k = 0; k < all.n && st == VTL_OK; k++) {
    vtl_node *x = all.v[k];
    for (int i = 0; i < x->ninputs; i++) {
      vtl_node *y = x->next[i].fn;
      if (!y || !x->needs[i]) continue;
      if (y->mark != gen) {
        y->mark = gen;
        y->deps = 0;
        if (!push(&all, y)) { st = vtl_error_set(VTL_ERR_OOM, "backward: out of memory"); break; }
      }
      y->deps++;
    }
  }
  vtl_tensor_release(start->grad);
  start->grad = seed;
  if (st == VTL_OK && !push(&ready, start)) st = vtl_error_set(VTL_ERR_OOM, "backward: out of memory");
  grad_off = 1;
  while (st == VTL_OK && ready.n) {
    vtl_node *x = ready.v[--ready.n];
    vtl_tensor *gout = x->grad;
    x->grad = NULL;
    vtl_tensor *gin[VTL_NODE_MAXIN] = {0};
    if (gout) {
      if (x->released) {
        st = vtl_error_set(VTL_ERR_ARG, "backward: the graph was freed by an earlier backward; pass "
                           "{retain_graph = true} to the first backward to run it again");
      } else if (vtl_profile_on()) {
        double t0 = vtl_profile_mark();
        st = x->backward(x, gout, gin);
        vtl_profile_add(x->name, vtl_profile_mark() - t0);
      } else {
        st = x->backward(x, gout, gin);
      }
    }
    vtl_tensor_release(gout);
    for (int i = 0; i < x->ninputs; i++) {
      vtl_tensor *gi = NULL;
      if (st == VTL_OK && gin[i] && x->needs[i]) {
        gi = reduce_to(x, gin[i], x->in_shape[i], x->in_ndim[i], x->in_dtype[i]);
        if (!gi) st = vtl_error_status();
      }
      vtl_tensor_release(gin[i]);
      if (st == VTL_OK && gi) {
        if (x->next[i].fn) st = accumulate(&x->next[i].fn->grad, gi);
        else if (x->next[i].leaf) st = accumulate_leaf(x->next[i].leaf, gi);
      }
      vtl_tensor_release(gi);
      vtl_node *y = x->next[i].fn;
      if (y && x->needs[i] && --y->deps == 0 && st == VTL_OK && !push(&ready, y))
        st = vtl_error_set(VTL_ERR_OOM, "backward: out of memory");
    }
    if (!retain_graph && st == VTL_OK) drop_saved(x);
  }
  grad_off = !was_on;
  /* on error, drop the partial gradients held by nodes */
  for (int k = 0; k < all.n; k++) { vtl_tensor_release(all.v[k]->grad); all.v[k]->grad = NULL; }
  free(all.v);
  free(ready.v);
  return st;
}
