/*
 * Reverse-mode automatic differentiation, define-by-run.
 *
 * A differentiable op (a `vtl_fn_*` function) runs its forward with the plain ops, then, when
 * grad mode is on and an input requires grad, records a node: the backward function, the
 * input edges, and what the backward needs (saved tensors, numbers). The output tensor's
 * grad_fn is that node. `vtl_autograd_backward` walks the nodes from a root in reverse
 * topological order, summing gradients per node, and accumulates into leaves' `.grad`.
 * Unless asked to retain the graph, each node drops its saved tensors once it has run.
 *
 * Backward functions run with grad mode off and use the plain ops (first-order only).
 */
#ifndef VTL_AUTOGRAD_H
#define VTL_AUTOGRAD_H
#include "core.h"

#define VTL_NODE_MAXIN 8
#define VTL_NODE_MAXSAVED 8

struct vtl_node;

/* gout: gradient of the node's output (same shape/dtype as the output). Sets gin[i] to a new
   reference holding the gradient for input i, or leaves it NULL (no gradient / not needed:
   node->needs[i] says which inputs want one). gin[i] may have the input's shape or any shape
   that broadcasts to it: the engine sums it down to the input's shape. */
typedef vtl_status (*vtl_backward_fn)(struct vtl_node *node, vtl_tensor *gout, vtl_tensor **gin);

typedef struct vtl_edge {
  struct vtl_node *fn;   /* producer of the input, or NULL for a leaf / no-grad input */
  vtl_tensor *leaf;      /* leaf input that requires grad (retained), or NULL */
} vtl_edge;

typedef struct vtl_node {
  int refcount;
  const char *name;               /* "MulBackward" */
  vtl_backward_fn backward;
  int ninputs;
  vtl_edge next[VTL_NODE_MAXIN];
  bool needs[VTL_NODE_MAXIN];     /* input i requires grad */
  int64_t in_shape[VTL_NODE_MAXIN][VTL_MAX_DIMS]; /* input shapes, for summing broadcast grads */
  int in_ndim[VTL_NODE_MAXIN];
  vtl_dtype in_dtype[VTL_NODE_MAXIN];
  vtl_tensor *saved[VTL_NODE_MAXSAVED];  /* detached aliases of what was saved */
  uint32_t saved_version[VTL_NODE_MAXSAVED];
  int nsaved;
  double f[8];                    /* numbers the backward needs */
  int64_t i[24];
  void *ctx;                      /* op-specific state, freed by ctx_free */
  void (*ctx_free)(void *ctx);
  bool released;                  /* saved state dropped after a backward */
  /* engine bookkeeping */
  int deps;
  unsigned mark;
  vtl_tensor *grad;
} vtl_node;

/* Per-tensor autograd state (vtl_tensor.ag). */
typedef struct vtl_autograd_meta {
  bool requires_grad;
  vtl_tensor *grad;       /* accumulated gradient of a leaf */
  vtl_node *grad_fn;      /* producer of a non-leaf */
  bool retains_grad;      /* non-leaf whose .grad is kept */
} vtl_autograd_meta;

/* Grad mode is per thread. */
bool vtl_grad_enabled(void);
void vtl_set_grad_enabled(bool on);

bool vtl_requires_grad(const vtl_tensor *t);
vtl_status vtl_set_requires_grad(vtl_tensor *t, bool on); /* leaves only; float dtypes only */
vtl_tensor *vtl_grad(const vtl_tensor *t);                 /* borrowed, may be NULL */
vtl_status vtl_set_grad(vtl_tensor *t, vtl_tensor *g);     /* g retained; NULL clears */
vtl_node *vtl_grad_fn(const vtl_tensor *t);                /* borrowed, may be NULL */

/* True when grad mode is on and one of the inputs requires grad. */
bool vtl_ag_needs(vtl_tensor *const *inputs, int n);
/* A node with edges to the inputs (NULL entries allowed); NULL on out of memory. */
vtl_node *vtl_ag_node(const char *name, vtl_backward_fn bw, vtl_tensor *const *inputs, int n);
void vtl_ag_save(vtl_node *node, vtl_tensor *t); /* retains t (NULL allowed) */
/* Makes node the grad_fn of out (out must be fresh: no grad_fn yet). Takes the caller's node
   reference. Returns out. */
vtl_tensor *vtl_ag_attach(vtl_tensor *out, vtl_node *node);
void vtl_node_retain(vtl_node *n);
void vtl_node_release(vtl_node *n);

/* Runs backward from root with gradient g (NULL: root must have one element; ones used). */
vtl_status vtl_autograd_backward(vtl_tensor *root, vtl_tensor *g, bool retain_graph);

/* For view-producing ops: a new tensor header that is a detached alias of t (same data). */
vtl_tensor *vtl_detach(vtl_tensor *t);

void vtl_autograd_meta_free(struct vtl_autograd_meta *m);

/* In-place ops call this before writing into t: refuses when t takes part in autograd while
   grad mode is on, and bumps t's storage version so saved tensors detect the change. */
vtl_status vtl_ag_check_inplace(vtl_tensor *t, const char *op);
/* Checks a saved tensor is unmodified since it was saved (for backward functions). */
vtl_tensor *vtl_ag_saved(vtl_node *node, int k);

#endif
