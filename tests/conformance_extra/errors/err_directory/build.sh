# desc: the program is a directory
mkdir -p a_directory
