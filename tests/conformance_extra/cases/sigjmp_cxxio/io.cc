#include <iostream>
#include <functional>
#include <sstream>
#include <locale>
extern "C" int io_run(std::function<int(int)> *cb)
{
    std::ostringstream os; os.imbue(std::locale::classic()); os << "value=" << (*cb)(20) << " hex=" << std::hex << 255;
    std::cout << "io plugin: " << os.str() << std::endl;
    return (*cb)(1);
}
