/* test_model.h — building a model from config text in the trainer's tests
 * (test_trainer, test_layers_rnn, test_layers_seq). */
#ifndef DV_TEST_MODEL_H
#define DV_TEST_MODEL_H

#include "checkpoint.h"
#include "model.h"

/* The model of config `text` (params from seed 3, scratch for batch B) on
 * be, or NULL with the message in err. With check_used, a key the build
 * did not read fails it too (every documented key is read). */
dv_model *test_model_try(const char *text, dv_backend *be, dv_loss loss, int B, int check_used,
                         char *err);
/* The same, failing the running test (with the text and the message) where
 * test_model_try returns NULL. */
dv_model *test_model_build(const char *text, dv_backend *be, dv_loss loss, int B, int check_used);

#endif
