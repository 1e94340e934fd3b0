// The Python module codetr._C: importing it loads this library, whose static initialisers
// register torch.ops.codetr.*. It defines no Python functions of its own.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
