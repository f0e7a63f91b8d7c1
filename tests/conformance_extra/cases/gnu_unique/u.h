struct Reg { static inline int count = 0; static int *addr() { return &count; } };
template <class T> struct Box { static int value; };
template <class T> int Box<T>::value = 10;
